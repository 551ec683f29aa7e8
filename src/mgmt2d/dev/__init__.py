"""Development-only code, not needed to run the pipeline on real data: the synthetic dataset
generator (``synth``), stacking from its true labels (``synth_stack``) and ``make demo`` (``demo``)."""
