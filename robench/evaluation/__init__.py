"""One evaluation: the run's description, plan, engine, protocols, records and run folder."""
