"""The DeepCluster application behind ``python -m fastdc.train``: configuration, data, models,
the trainer and its methods (DeepCluster, DeeperCluster), checkpoints and outputs."""
