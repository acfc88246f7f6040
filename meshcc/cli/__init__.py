"""The admin commands: `meshcc hosts|doctor|setup|zipapp`."""
