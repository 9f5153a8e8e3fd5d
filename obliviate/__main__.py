from obliviate.cli import main

raise SystemExit(main())
