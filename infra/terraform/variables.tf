variable "region" {
  description = "AWS region of the bucket (CLOSEDLOOP_AWS_REGION)"
  type        = string
  default     = "eu-west-1"
}

variable "bucket" {
  description = "the one bucket of the production profile (CLOSEDLOOP_S3_BUCKET): lake/, mlflow/, bundles/"
  type        = string
}

variable "flows_role_arn" {
  description = "IAM role the flow-run pods assume (IRSA): ingest, train, deploy, monitor"
  type        = string
}

variable "serving_role_arn" {
  description = "IAM role the scoring-service pods assume (IRSA)"
  type        = string
}

variable "landing_ia_days" {
  description = "days before landed batches and offline tables move to STANDARD_IA"
  type        = number
  default     = 30
}

variable "quarantine_retention_days" {
  description = "days a quarantined batch and its reasons are kept (an audit needs them: a year by default)"
  type        = number
  default     = 400
}

variable "noncurrent_retention_days" {
  description = "days an overwritten or deleted object version stays recoverable"
  type        = number
  default     = 90
}
