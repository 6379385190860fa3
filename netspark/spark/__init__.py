"""PySpark integration: one flag routes every RDD shuffle through netspark."""
