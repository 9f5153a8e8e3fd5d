"""obliviate: selective unlearning for causal language models.

Data flows one way: data -> target model -> method -> unlearned model -> audit -> report.
The subpackages follow that flow (``data``, ``models``, ``methods``, ``training``, ``audit``, ``report``).
"""

__version__ = "0.1.0"
