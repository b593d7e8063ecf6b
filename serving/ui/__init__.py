"""The rep pages under ``/ui``: server-rendered (Jinja2, one stylesheet, no JavaScript build),
mounted into the BentoML service beside the JSON API.

- ``/ui/login``: the API key is exchanged for a signed session cookie;
- ``/ui/accounts``: my accounts from the latest batch run, filtered, sorted and paged in SQL;
- ``/ui/accounts/{id}``: the tier and why, ICP, rule and cut-off, what would move it up, the
  playbook, open pipeline, the tier history and (where the override module is installed) the
  override form;
- ``/ui/manager``: capacity used per rep, tier movement, per-tier figures over the runs.

The pages reuse the service's scorer (``OnlineScorer.explain``) and the tier history
(``serving.account_history``, ``serving.reports``): nothing is computed twice.
"""

from serving.ui.routes import UiContext, app, bind

__all__ = ["UiContext", "app", "bind"]
