"""The run folder's files as the stages and the report read them: `Run` (`folder`), the maps' index (`index`), the examples file (`examples`)."""
