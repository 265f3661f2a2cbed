"""``sweeper serve``: a local web app over the same library as the command line.

``queue`` keeps the sweeps on disk, ``supervisor`` runs them one at a time as supervised
``sweeper run`` children, ``pages`` computes what each page shows (one data function per page,
tested), ``security`` guards every request, ``app`` routes pages, their JSON twins and the live
events. The process that serves pages never measures: its children do.
"""
