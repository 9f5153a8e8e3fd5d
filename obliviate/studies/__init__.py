"""Studies: what orchestrates the layers below (methods, training, audit) into experiments: the benchmark's
target and oracle (``targets``), the demo, tuning on the validation part, DP2Unlearning, RESTOR, worst-case forget
sets and MUSE's curves."""
