"""gradfit's safe expression grammar (no eval): the tree, the parser, formula text."""
