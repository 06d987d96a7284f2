"""Demos: the quickstart, its data recipes (images, sounds, a synthesised speech corpus, Fashion-MNIST, LLM paraphrases
of a recipe's class phrases) and its HTML report. They sit at the top of the layer order: the library never
imports them."""
