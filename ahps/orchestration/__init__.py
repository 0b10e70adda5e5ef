"""How pipelines are run: parameters (:mod:`~ahps.orchestration.params`), kfp's local runner
(:mod:`~ahps.orchestration.local`), a Kubeflow Pipelines host (:mod:`~ahps.orchestration.kfp_client`) and cron
expressions (:mod:`~ahps.orchestration.cron`). No click here: the CLI parses and prints, these modules act."""
