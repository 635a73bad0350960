"""Tensor parallelism: one model split over several ranks (GPUs, or processes on the CPU).

parallel_state: which part a process holds and the collectives between ranks; sharding: which
part of each checkpoint tensor that is; group: rank 0's side (the engine's own process), which
spawns the other ranks and sends them every step; worker: the loop those ranks run.
"""
