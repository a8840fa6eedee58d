"""The k-means engine: Lloyd iterations, seeding, PCA, the two-level hierarchy, the flat index
and the collectives that shard them over a process group. Built on :mod:`fastdc.ops`; never
imports the DeepCluster application."""
