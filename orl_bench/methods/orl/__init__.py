"""ORL (Xie et al., NeurIPS 2021) stage 2, correspondence discovery (docs/protocols.md 2).

proposals.py: selective search, cached per image, plus the official and ground-truth sources;
boxes.py: the in-order box filter; roi_embed.py: one RoI embedding per kept box;
retrieval.py: image kNN and the global top-ratio RoI pairs; correspondence.py: the artifact.
"""
