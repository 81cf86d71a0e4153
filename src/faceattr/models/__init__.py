"""Model definitions: the FaceNet backbone and transfer top, the from-scratch CNN, heads and I/O."""
