"""Reports: a run's curves, diagnostics and embedding-space figures as one HTML file
(``contralign report``)."""
