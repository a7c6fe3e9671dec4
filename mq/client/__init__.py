"""Client library: producers, consumers, admin."""
