"""Reference answers to the exercises, same names and signatures as exercises/."""
