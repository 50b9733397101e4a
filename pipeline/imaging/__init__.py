"""Synthetic inspection images: the renderers of every product kind (tablets, vials, blister
packs, labels), their defects, the product catalogue, and simulated dataset folders (`generate`).
Nothing on the inspection path imports this package: it is the simulator's, and training's."""
