"""Draft-head architectures shared by training (specforge) and serving (serving)."""
