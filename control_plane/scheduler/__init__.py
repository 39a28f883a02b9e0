"""Place sandboxes on agents."""

from control_plane.scheduler.best_fit import Candidate, Request, choose, isolations_of

__all__ = ["Candidate", "Request", "choose", "isolations_of"]
