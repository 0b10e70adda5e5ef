"""What each pipeline step does, as plain Python (no kfp): testable and runnable without a pipeline.

The KFP components (:mod:`components`) call exactly one function of these modules each:

=================================  =======================================================================
module                             steps
=================================  =======================================================================
:mod:`~ahps_core.steps.transfer`   ``find_base_lr_step`` (opens the run group), ``plan_step``, ``compare_step``
:mod:`~ahps_core.steps.reevaluate` ``sample_step`` (opens the run group), ``reeval_base_lr_step``,
                                   ``reeval_plan_step``, ``reeval_train_step``, ``rank_step``
:mod:`~ahps_core.steps.training`   ``train_step``: one architecture x arm x seed (both pipelines)
:mod:`~ahps_core.steps.base_lr`    ``base_lr_step``: the proxy's base LR (both pipelines)
:mod:`~ahps_core.steps.common`     arms, file names, environment, run group and parent run, training config
:mod:`~ahps_core.steps.params`     the checks of each pipeline's parameters
:mod:`~ahps_core.steps.report`     MLflow as the report: run descriptions, table artifacts, child delta/rank tags
=================================  =======================================================================

Every step takes the MLflow tracking URI, the experiment and the run-group key, writes its results to its output
directory *before* reporting them to MLflow, and records its run through :func:`ahps_core.tracking.tracked_step`,
so re-running a step of a finished run group reuses its results instead of recomputing them.
"""
