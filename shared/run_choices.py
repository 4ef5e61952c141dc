"""The names of the choices a run offers, in a module light enough for every command's ``--help``.

Signal kinds (what a FeatureRequest asks to be released; ``shared.compute.signals`` registers them), what a
run or an audit can be about, and where the synthetic images start. Nothing here imports torch.
"""

from __future__ import annotations

from shared.compute.signals import signal_names

SIGNALS = signal_names()  # what a FeatureRequest can ask to be released
# Synchronised DP-KIP is a method, not a signal kind: the owner sees KipStepRequests, not FeatureRequests.
KIP_SYNC = "kip-sync"
METHODS = (*SIGNALS, KIP_SYNC)  # what a run, or an audit, can be about
INITS = ("noise", "aux")  # where the synthetic images start: N(0, 1), or public auxiliary images
