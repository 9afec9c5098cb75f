"""The referee: the oracle, the view an attack holds, the guard and the isolation boundary."""
