"""nipype wiring of the bids-mcsr BIDS-App (the computations live in ``bids_mcsr``)."""

import os

# nipype would otherwise query a web service for updates at import; compute nodes are offline.
os.environ.setdefault("NIPYPE_NO_ET", "1")
