"""Meta-learning algorithms written once with ops."""
