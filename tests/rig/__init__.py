"""The article's PC as a test landscape: a rig model (simulated), shared by tests and benchmarks.

``physics`` predicts what one machine does with one model for a load configuration; ``sim``
puts it behind sweeper's settings and LM Studio's load keys, with a stated noise distribution
and a simulated clock. Test instruments only, never a user backend.
"""
