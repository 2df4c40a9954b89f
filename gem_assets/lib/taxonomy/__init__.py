"""The GIS taxonomy: terms, c-TF-IDF, names, the tree, coherence."""
