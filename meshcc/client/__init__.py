"""The compile client: meshcc-gcc, meshcc-g++, masquerade links and `meshcc gcc ...`."""
