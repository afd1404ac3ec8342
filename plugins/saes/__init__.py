"""Built-in saes."""
