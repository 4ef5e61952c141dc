"""Named run settings: the values a preset gives a run (``deploy.run_settings.RunSettings`` builds the run)."""

from __future__ import annotations

# Gradient-signal settings, chosen by measurement (see README, "Gradient signals").
GRADIENT_DRAWS = 100
GRADIENT_K = 64
GRADIENT_LR = 0.3
GRADIENT_STEPS_PER_DRAW = 10

# Synchronised DP-KIP settings: every step is a release costing the owner about 0.2 s per private
# example at IPC 10 on this CPU (docs/dp-kip.md), hence a small private batch.
KIP_SYNC_STEPS = 100
KIP_SYNC_GROUP = 5.0
KIP_SYNC_STEPS_PER_REQUEST = 10

# Decoupled DP-KIP settings.
KIP_DRAWS = 100
KIP_K = 128
KIP_ITERATIONS = 500
KIP_LR = 0.03

# "default" is what the README runs (chosen by measurement on a 2-core CPU, see README);
# "reference" reproduces the settings of the authors' code as measured in DESIGN section 7.
PRESETS = {
    "default": dict(
        width=64,
        # Chosen on public validation data by the frontier benchmark (issue 29): 100 records per class
        # per release over 100 releases (validation 80.30%), against 50 over 200 (79.73%) and 200 over
        # 50 (79.93%). The owner's work (draws x group) and the step (lr x group^2: 0.3 at group 50)
        # are the same for all three.
        draws=100,
        group_size=100.0,
        lr=0.075,
        # A smaller export's classes lower the group (the owner's sampling-rate cap): down to group 50
        # the draws and the step follow it, as measured; below, the run is the one group 50 gives.
        scale_down_to=50.0,
        # Chosen on public validation data by the frontier benchmark (issue 29): with the auxiliary prior
        # holding the directions the projection leaves out, k 50 (candidate prior-1-k50) 82.00% against
        # 81.97% at k 200 and 81.50% at k 100; half the released numbers of k 100, so less noise each.
        subspace_dim=50,
        # Chosen on public validation data by the frontier benchmark (issue 29): PEA, each stored image
        # holding four half-size ones started from four auxiliary images, at 1,000 iterations (candidate
        # prior-1-k50-pea-1000) 83.07% against 82.67% at 500 and 82.00% without PEA at 2,000
        # (prior-1-k50). `--no-pea --iterations 2000` runs the one before.
        pea=True,
        iterations=1000,
        eval_epochs=300,
        eval_width=128,
        aux_per_class=50,
        signal="features",
        steps_per_draw=1,
        # Chosen on public validation data by the frontier benchmark (issue 16): 79.73% from public
        # auxiliary images against 78.20% from noise at epsilon 1; `--init noise` keeps the other.
        init="aux",
        # Chosen on public validation data by the frontier benchmark (issue 29): the auxiliary prior at
        # weight 1 (candidate prior-1) 81.50% against 80.30% without (group-100); weights 0.6 and 2 gave
        # 81.50% and 81.47% (docs/bench/issue29_levers.md). `--aux-prior 0` turns it off.
        aux_prior=1.0,
    ),
    "reference": dict(
        width=128,
        draws=200,
        subspace_dim=200,
        iterations=2000,
        lr=1.0,
        eval_epochs=300,
        eval_width=128,
        aux_per_class=100,
        signal="features",
        steps_per_draw=1,
        init="noise",
    ),
    # The authors' published settings for Fashion-MNIST (DESIGN sections 6-7): 1,000 draws of 500
    # private images (group 50 per class), 1,000 auxiliary images, SER k = 200, width 128, 200,000
    # optimisation iterations. Meant for a GPU (``--device cuda``); see README, "Hardware".
    "paper": dict(
        width=128,
        draws=1000,
        subspace_dim=200,
        iterations=200_000,
        lr=1.0,
        eval_epochs=300,
        eval_width=128,
        aux_per_class=100,
        signal="features",
        steps_per_draw=1,
        init="noise",
        # Every draw's network and basis stay cached (about 5.7 MB each at width 128, k = 200): with
        # the default 512 MB most of the 200,000 iterations would rebuild a basis (1.7 s on a CPU).
        cache_mb=8192,
    ),
    "quick": dict(
        width=32,
        draws=40,
        subspace_dim=32,
        iterations=300,
        lr=0.3,
        eval_epochs=100,
        eval_width=64,
        aux_per_class=20,
        signal="features",
        steps_per_draw=1,
        init="noise",
    ),
    # Gradient signals (issue 5): per-example loss gradients of a small ConvNet (21,898 parameters),
    # projected onto k principal directions of the auxiliary set's gradients. See README.
    "gradients": dict(
        width=32,
        draws=GRADIENT_DRAWS,
        subspace_dim=GRADIENT_K,
        iterations=2000,
        lr=GRADIENT_LR,
        eval_epochs=300,
        eval_width=128,
        aux_per_class=50,
        signal="gradients",
        steps_per_draw=GRADIENT_STEPS_PER_DRAW,
        init="noise",
    ),
    # Decoupled DP-KIP (issue 4): packed moments of k projected scattering features (no network, no
    # augmentation), summed over every draw and fitted offline with Adam, starting from public
    # auxiliary images (better than noise under every protocol measured). See README, "DP-KIP".
    "kip-decoupled": dict(
        width=32,
        draws=KIP_DRAWS,
        subspace_dim=KIP_K,
        iterations=KIP_ITERATIONS,
        lr=KIP_LR,
        eval_epochs=300,
        eval_width=128,
        aux_per_class=50,
        signal="kip",
        steps_per_draw=1,
        init="aux",
    ),
    # Synchronised DP-KIP-ScatterNet (the paper's method): the owner runs K = draws_per_request noised
    # Adam steps per message on the set it is sent; draws = steps = releases.
    "kip-sync": dict(
        width=32,
        draws=KIP_SYNC_STEPS,
        subspace_dim=0,
        iterations=KIP_SYNC_STEPS,
        lr=KIP_LR,
        eval_epochs=300,
        eval_width=128,
        aux_per_class=50,
        signal="kip-sync",
        steps_per_draw=1,
        init="aux",
        group_size=KIP_SYNC_GROUP,
        draws_per_request=KIP_SYNC_STEPS_PER_REQUEST,
    ),
}
