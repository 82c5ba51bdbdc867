"""The RELATE lab: everything that reproduces the paper around the plugins, not part of a training run.

The click/conversion simulator (stand-in for real users), the end-to-end demo, the Table 3
ablation, their reports and benchmarks. The plugin surface (rewards, credit assignment, the
CTCVR reward, the search-ads data and eval metrics) lives in the modules beside this package
and never imports it at module level, so installing rlgen-relate for its rewards costs nothing here.
"""
