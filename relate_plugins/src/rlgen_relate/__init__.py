"""RELATE for rlgen: search-ad rewards, granularity-aware credit assignment and the CTCVR reward.

The entry-point modules are the plugin surface: :mod:`.rewards`, :mod:`.credit`,
:mod:`.ctcvr.reward`, :mod:`.searchads` (the builtin data) and :mod:`.evaluation` (eval
metrics). :mod:`.lab` holds the simulator, the demo and the ablation; :mod:`.cli` is the
``rlgen-relate`` command.
"""
