"""Jobs: the queue every generation goes through, with ids, progress and interrupt per job."""
