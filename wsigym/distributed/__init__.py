"""Running wsigym's three heavy jobs on Ray: slide extraction, the evaluation protocol, training sweeps.

Everything here is optional (``pip install wsigym[ray]``): the default ``--backend local`` never imports
Ray. One module per concept:

- :mod:`wsigym.distributed.cluster`: which cluster (``--backend``, ``--address``), connecting, task resources;
- :mod:`wsigym.distributed.gather`: waiting for a set of tasks with one overall progress bar;
- :mod:`wsigym.distributed.extraction`: ``wsigym slides extract --backend ray`` (a pool of actors, the encoder
  loaded once per worker);
- :mod:`wsigym.distributed.evaluation`: ``wsigym evaluate --backend ray`` (one task per agent, budget, seed);
- :mod:`wsigym.distributed.sweeps`: Ray Tune sweeps of ``wsigym train ppo`` and ``zoo train``.
"""
