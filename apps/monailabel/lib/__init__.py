"""The bids-mcsr MONAI Label app's modules; bids_bridge is the only one that imports bids_mcsr."""
