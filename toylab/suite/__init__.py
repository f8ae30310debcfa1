"""The methods suite: planted-truth models on which the lab's methods can fail, scored over seeds.

Each suite model is a preset trained at several seeds whose truth (the edges or features that carry
the planted rule) comes from its data generator and is checked by intervention, never by a method
under test. The suite scores every discovery and feature method against that truth.

Modules:

- :mod:`toylab.suite.spec`: the records a suite model is described by (:class:`Task`,
  :class:`PlantedCircuit`).
"""
