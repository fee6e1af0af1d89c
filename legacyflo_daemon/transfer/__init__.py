"""Copying one request: the copier and its folder passes, with the pure rules they follow
(folder mapping, message identity, back-off) and the byte budget that bounds memory."""
