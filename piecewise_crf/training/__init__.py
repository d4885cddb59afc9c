"""Piecewise training: the loop (`loop.train`) and what it is made of.

loop.py         train(): checks, then epochs of SGD steps, validation and checkpoints
losses.py       the piecewise loss per step, class weights, the joint (mean-field) loss
optim.py        SGD groups, the poly schedule, frozen backbone layers
run_dir.py      the run folder: refusal to replace a run, lock, log.csv, curves.png
state.py        RNG states, saved in last.pt for exact resume
distributed.py  this process's rank under torchrun, and the collectives the loop needs
"""
