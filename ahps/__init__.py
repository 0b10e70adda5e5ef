"""The ahps application: the ``ahps`` command (:mod:`ahps.cli`) and the orchestration of the pipelines
(:mod:`ahps.orchestration`: parameters, kfp's local runner, the Kubeflow Pipelines client, cron).

Layers, imports pointing one way only: ``ahps`` -> ``pipelines`` -> ``components`` -> ``ahps_core``.
"""
