"""The experts: the specialist models, how to prompt them and how to talk to them."""
