"""The engine of the estimate: the Gram form's per-timestep work, independent of d (docs/estimator.md).

One module per concern:

- ``noise``: the queries' projections P (drawn in the span of the samples, or in R^d for the reference)
  and the bound on their logits;
- ``precision``: the precision of the heavy products, and the float32 product mode it pins;
- ``plan``: chunks, blocks and their memory;
- ``blocks``: a block's constants, its chunk of queries, the ``Backend`` protocol and the shortcuts every
  backend shares;
- ``backends``: what runs the blocks (``pytorch``, ``fused``), chosen per run;
- ``run``: one device's share, chunk by chunk.

``vrcurve.estimator.estimate`` puts them together.
"""
