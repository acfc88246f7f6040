"""`meshcc daemon`: the compile server, the mesh, the control socket and the status port."""
