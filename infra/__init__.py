"""Install the Corral agent into a customer's account with Pulumi.

One component, :class:`~infra.component.CorralAgent`, and four stacks (``aws``, ``gcp``,
``azure``, ``baremetal``; :mod:`infra.stacks`). :mod:`infra.plan` runs a stack offline
under Pulumi's mocks and records what it would create; :mod:`infra.policy` checks that
record against the secure-by-default rules; :mod:`infra.install` is what
``corral install`` runs. The host-side files come from :mod:`infra.render`.

Needs the ``infra`` extra (``pip install 'corral[infra]'``); ``pulumi up`` also needs
the Pulumi CLI.
"""
