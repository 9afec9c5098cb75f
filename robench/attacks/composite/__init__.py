"""Attacks built from other attacks: the AutoAttack-style ensemble and the transfer attack."""
