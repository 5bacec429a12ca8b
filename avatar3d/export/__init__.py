"""Exports for studios and VR: the head as a coloured mesh, blendshape curves in the Live Link Face CSV layout."""
