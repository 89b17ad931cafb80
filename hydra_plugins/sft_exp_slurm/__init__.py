"""hydra/launcher=slurm's launcher: submitit's SLURM launcher, with sft_exp.run.slurm.check_controller first.

A Hydra plugin (Hydra instantiates launchers from the hydra_plugins package only); without
hydra-submitit-launcher installed there is nothing to extend and this module defines nothing.
"""

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _SubmititSlurmLauncher
except ImportError:  # pip install 'sft_exp[slurm]'
    _SubmititSlurmLauncher = None

if _SubmititSlurmLauncher is not None:

    class SlurmLauncher(_SubmititSlurmLauncher):
        """Every job of a sweep is one SLURM job; `sinfo` must answer before any is submitted."""

        def launch(self, job_overrides, initial_job_idx):
            import logging
            import sys

            from sft_exp.errors import ConfigError
            from sft_exp.run.slurm import check_controller, watch_jobs_through_the_controller

            try:
                check_controller()
            except ConfigError as e:  # a setup mistake: the message says what to check, a traceback would bury it
                logging.getLogger("sft_exp").error("%s", e)
                sys.exit(2)
            watch_jobs_through_the_controller()  # a job that dies without a result must not be waited for forever
            return super().launch(job_overrides, initial_job_idx)
