"""LM Station engines as Ray Serve replicas across machines (``lmstation cluster``; the optional
extra ``pip install lmstation[cluster]``). Ray is imported only in this package."""
