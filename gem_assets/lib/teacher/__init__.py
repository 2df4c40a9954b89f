"""The teacher: embeddings, the vMF mixture fitted by GEM, seeding, baselines, the teacher sample."""
