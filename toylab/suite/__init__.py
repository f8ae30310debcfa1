"""The methods suite: planted-truth models on which the lab's methods can fail, scored over seeds.

Each suite model is a preset trained at several seeds whose truth (the edges or features that carry
the planted rule) comes from its data generator and is checked by intervention, never by a method
under test. The suite scores every discovery and feature method against that truth.

Modules:

- :mod:`toylab.suite.spec`: the records a suite model is described by (:class:`Task`,
  :class:`PlantedCircuit`).
- :mod:`toylab.suite.planted`: the planted-truth models (``PLANTED``), their tasks, truths, the
  intended-structure checks (``INTENDED``) and the negative controls (``NEGATIVE_CONTROLS``).
- :mod:`toylab.suite.readers`: which head plays which part, read off attention at the positions the
  generator labels (the truths' only reading of the model).
- :mod:`toylab.suite.truth`: the intervention check of a truth (``check_truth``: kept and removed
  fractions of the behaviour) and of a dense behaviour (``check_dense``).
- :mod:`toylab.suite.entries`: the suite's models that exist today (``induction-2l``,
  ``skiptrigram-1l``, features of ``facts-1l``), their tasks and truths, and the registry that takes in
  :mod:`toylab.suite.planted` where it exists.
- :mod:`toylab.suite.scores`: every discovery and feature method scored against a truth at one seed,
  and each discovery method's confidence (also on the negative control, which has no sparse truth).
- :mod:`toylab.suite.runner`: models trained or loaded per seed, jobs over processes, ``toylab suite``.
- :mod:`toylab.suite.report`: means and spreads over seeds, ``suite.md``, ``suite.json``, ``suite.png``.
"""
