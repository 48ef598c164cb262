"""Data: image readers, the catalog, tiling at one physical scale, the tile folder, splits,
augmentation, torch datasets over tiles, the label store, and the synthetic set."""
